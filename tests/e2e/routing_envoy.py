"""Envoy's configuration for the routing stack (routing_stack.py): two listeners over the same
replicas. `picker` runs the endpoint picker as ext_proc (processing modes as the EPP's own
manifests: headers sent, bodies FULL_DUPLEX_STREAMED) and sends each request where the EPP says,
through the `override_host` load-balancing policy reading the `x-gateway-destination-endpoint`
header (or the same list in `envoy.lb` dynamic metadata); the EPP lists its endpoints best first,
so a retry after a reset or refused connection goes to the next-best replica. `round_robin` is
the baseline: ROUND_ROBIN over the same replicas, as a Kubernetes Service spreads requests.
"""
from __future__ import annotations


def envoy_config(listen_picker: int, listen_rr: int, admin: int, epp_grpc: int,
                  replicas: list[tuple[str, int]]) -> dict:
    def endpoints() -> dict:
        return {"endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
            for ip, port in replicas]}]}

    # Retry what a dead replica causes before any response byte: the connection refused, or reset.
    retry = {"retry_on": "connect-failure,reset,refused-stream", "num_retries": len(replicas) - 1}

    def listener(name: str, port: int, cluster: str, ext_proc: bool) -> dict:
        filters = []
        if ext_proc:
            filters.append({
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "ext_proc"}, "timeout": "10s"},
                    # As the EPP's own manifests: headers sent, bodies streamed full-duplex.
                    "processing_mode": {
                        "request_header_mode": "SEND", "response_header_mode": "SEND",
                        "request_body_mode": "FULL_DUPLEX_STREAMED",
                        "response_body_mode": "FULL_DUPLEX_STREAMED",
                        "request_trailer_mode": "SEND", "response_trailer_mode": "SEND"},
                    "message_timeout": "1000s",
                    "failure_mode_allow": False}})
        filters.append({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "suppress_envoy_headers": True}})
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {"name": name, "virtual_hosts": [{
                        "name": name, "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {
                            "cluster": cluster, "timeout": "600s", "retry_policy": retry}}]}]},
                    "http_filters": filters}}]}]}

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [listener("picker", listen_picker, "pool_picked", ext_proc=True),
                          listener("round_robin", listen_rr, "pool_round_robin", ext_proc=False)],
            "clusters": [
                {"name": "pool_picked", "type": "STATIC", "connect_timeout": "2s",
                 "load_balancing_policy": {"policies": [{"typed_extension_config": {
                     "name": "envoy.load_balancing_policies.override_host",
                     "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies."
                                  "override_host.v3.OverrideHost",
                         "override_host_sources": [
                             {"header": "x-gateway-destination-endpoint"},
                             {"metadata": {"key": "envoy.lb",
                                           "path": [{"key": "x-gateway-destination-endpoint"}]}}],
                         "fallback_policy": {"policies": [{"typed_extension_config": {
                             "name": "envoy.load_balancing_policies.round_robin",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                       "load_balancing_policies.round_robin.v3.RoundRobin"}}}]},
                     }}}]},
                 "load_assignment": {"cluster_name": "pool_picked", **endpoints()}},
                {"name": "pool_round_robin", "type": "STATIC", "connect_timeout": "2s",
                 "lb_policy": "ROUND_ROBIN",
                 "load_assignment": {"cluster_name": "pool_round_robin", **endpoints()}},
                {"name": "ext_proc", "type": "STATIC", "connect_timeout": "5s",
                 "typed_extension_protocol_options": {
                     "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                         "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                         "explicit_http_config": {"http2_protocol_options": {}}}},
                 "load_assignment": {"cluster_name": "ext_proc", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {
                         "address": "127.0.0.1", "port_value": epp_grpc}}}}]}]}},
            ]},
    }
