from __future__ import annotations

from minisgl_operator.merge import deep_merge


def test_named_lists_merge_by_name_and_append_new_names():
    base = {"containers": [{"name": "worker", "image": "a", "env": [{"name": "A", "value": "1"}]}]}
    over = {"containers": [{"name": "worker", "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]},
                           {"name": "sidecar", "image": "s"}]}
    merged = deep_merge(base, over)
    worker, sidecar = merged["containers"]
    assert worker["image"] == "a"
    assert worker["env"] == [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]
    assert sidecar == {"name": "sidecar", "image": "s"}


def test_unnamed_lists_and_scalars_replace_and_null_deletes():
    base = {"tolerations": [{"key": "a"}], "x": 1, "y": {"z": 2}}
    merged = deep_merge(base, {"tolerations": [{"key": "b"}], "x": None, "y": {"w": 3}})
    assert merged == {"tolerations": [{"key": "b"}], "y": {"z": 2, "w": 3}}


def test_inputs_are_not_modified():
    base = {"a": {"b": [{"name": "n", "v": 1}]}}
    deep_merge(base, {"a": {"b": [{"name": "n", "v": 2}]}})
    assert base == {"a": {"b": [{"name": "n", "v": 1}]}}
