"""Typed messages between the server's processes, grouped by the process that receives them.

backend.py: received by the scheduler; tokenizer.py: by tokenizer workers and the detokenizer;
frontend.py: by the API server process. codec.py encodes all of them (msgpack).
"""
