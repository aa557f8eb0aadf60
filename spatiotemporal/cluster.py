"""Starting or joining Ray for an entry point: the one place a command connects to a cluster.

`ray.init(address=...)` meets a cluster it cannot join by retrying in C++ for about 20 seconds,
printing a warning line each time, and then raising an error that names the node's interface
address rather than the one given. `cluster_to_join` first asks the cluster's GCS for its
metadata (or, for `ray://`, its Ray Client server for a ping) over one gRPC call on Ray's own
channel (its TLS settings and token interceptor) with a short timeout, so a wrong host or port, a
missing or wrong token and a Ray or Python version the cluster does not run each become one line
naming the address as given, before anything runs. `start_ray` joins what it checked, or starts a
private local Ray.

Token authentication follows Ray's rules: a process sends a token only with RAY_AUTH_MODE=token
(or, for `auto`, when a token file exists), and takes it from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
or ~/.ray/auth_token, in that order.
"""

from __future__ import annotations

import json
import logging
import os

# Time for the GCS to answer one call. A GCS that is up answers in milliseconds; an address where
# nothing listens is refused at once; only a host that drops packets uses all of it.
PROBE_TIMEOUT_S = 5.0
# The Ray Client server's port when a `ray://` address names none (`ray start --head`'s default).
RAY_CLIENT_DEFAULT_PORT = 10001

_TOKEN_PLACES = "give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


class ClusterJoinError(ValueError):
    """The Ray cluster at the address given cannot be joined; the message is one line."""


def cluster_address(address: str | None) -> str | None:
    """The cluster an entry point joins: `address` (`--address`, a config's ray.address), else
    RAY_ADDRESS. None means the entry point starts a private Ray: nothing given, or `local`."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def cluster_to_join(address: str | None) -> str | None:
    """`cluster_address(address)`, checked (`check_cluster`) each time: a GCS that is up answers in
    milliseconds. An entry point calls it before it writes anything (and, where it can, before it
    loads torch); `start_ray` calls it again at the join. None where Ray already runs in this
    process (the caller's Ray is used) or a private Ray is to start. Raises ClusterJoinError (one
    line)."""
    address = cluster_address(address)
    if address is None:
        return None
    import ray

    if ray.is_initialized():
        return None
    check_cluster(address)
    return address


def start_ray(address: str | None, local: dict | None = None, **init_kwargs) -> bool:
    """Ray for an entry point. False (and nothing done) where Ray already runs in this process.
    Else True, having joined the cluster `cluster_to_join(address)` names with `init_kwargs`, or
    started a private local Ray with `init_kwargs` updated by `local` (num_cpus, object store,
    a runtime_env of its own): the caller shuts down what this started. Ray's INFO lines stay off
    the console unless `logging_level` says otherwise."""
    import ray

    from spatiotemporal.ray_console import without_auth_default_notice

    if ray.is_initialized():
        return False
    joined = cluster_to_join(address)
    init_kwargs.setdefault("logging_level", logging.WARNING)
    if joined:
        try:
            ray.init(address=joined, **init_kwargs)
        except Exception as err:  # noqa: BLE001 - the check passed, the join did not: still one line
            raise ClusterJoinError(_line(f"cannot join the Ray cluster at {joined}: {_first_line(err)}")) from None
    else:
        # "local" starts a fresh instance; without it Ray would attach to whatever cluster another
        # process on this machine started last.
        with without_auth_default_notice():
            ray.init(address="local", **{**init_kwargs, **(local or {})})
    return True


def check_cluster(address: str) -> None:
    """Raise ClusterJoinError unless what `address` names (host:port or `auto`: a GCS; ray://:
    a Ray Client server) answers this process, accepts its token and, for a GCS, runs this
    process's Ray and Python versions."""
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    where = f"cannot join the Ray cluster at {address}"
    client = address.startswith("ray://")
    if client:
        target = address[len("ray://"):]
        if ":" not in target.rsplit("]", 1)[-1]:
            target = f"{target}:{RAY_CLIENT_DEFAULT_PORT}"
    else:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            target = canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as err:
            raise ClusterJoinError(_line(f"{where}: {_first_line(err)}")) from None
    if address == "auto":
        where += f" ({target})"
        _enable_token_auth_like_ray_init()
    try:
        sends_token = AuthenticationTokenLoader.instance().has_token()
    except AuthenticationError as err:  # RAY_AUTH_MODE=token but no token, or an unreadable file
        said = _first_sentence(err)
        advice = "" if "RAY_AUTH_TOKEN" in said else f"; {_TOKEN_PLACES}"  # Ray named the source
        raise ClusterJoinError(_line(f"{where}: {said}{advice}")) from None

    channel = init_grpc_channel(target)
    try:
        if client:
            from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

            ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), timeout=PROBE_TIMEOUT_S
            )
            return  # Ray Client compares versions itself as it connects
        from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
        from ray._private.ray_constants import KV_NAMESPACE_CLUSTER
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        reply = gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
            gcs_service_pb2.InternalKVGetRequest(key=CLUSTER_METADATA_KEY, namespace=KV_NAMESPACE_CLUSTER),
            timeout=PROBE_TIMEOUT_S,
        )
    except grpc.RpcError as err:
        raise ClusterJoinError(_line(f"{where}: {_refusal(err, sends_token, target, client)}")) from None
    finally:
        channel.close()
    if reply.value:
        mismatch = version_mismatch(json.loads(reply.value))
        if mismatch:
            raise ClusterJoinError(_line(f"{where}: {mismatch}"))


def _enable_token_auth_like_ray_init() -> None:
    """What ray.init does for `auto`: a token file found on this machine turns token auth on. Ray
    announces that in a warning, which would come before the one line of a refusal."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    from spatiotemporal.ray_console import without_auth_default_notice

    with without_auth_default_notice():
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def version_mismatch(cluster_metadata: dict) -> str | None:
    """What differs between the cluster's Ray and Python (its GCS's CLUSTER_METADATA) and this
    process's, by Ray's own rule (RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL); None when they match."""
    from ray._private.utils import check_version_info, compute_version_info

    try:
        check_version_info(cluster_metadata, "this machine")
    except RuntimeError:
        ray_here, python_here = compute_version_info()
        return (f"the cluster runs Ray {cluster_metadata['ray_version']} on Python "
                f"{cluster_metadata['python_version']}, this process Ray {ray_here} on Python "
                f"{python_here}; run both on the same versions")
    return None


def _refusal(err, sends_token: bool, target: str, client: bool) -> str:
    """Why the server at `target` did not answer the probe, and what to do, in a few words."""
    import grpc

    code = err.code()
    port_option = "--ray-client-server-port" if client else "--port"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if not sends_token:
            return f"the cluster requires token authentication; set RAY_AUTH_MODE=token and {_TOKEN_PLACES}"
        return f"the cluster refused the token from {_token_source()}; give the token the cluster was started with"
    if code == grpc.StatusCode.UNAVAILABLE:
        details = err.details() or ""
        if "resolv" in details or "lookup" in details:  # gRPC's DNS resolver: no such host name
            return f"cannot resolve {target.rsplit(':', 1)[0]} (no such host name here)"
        return f"nothing answers there (is `ray start --head` running there, and is this its {port_option}?)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {PROBE_TIMEOUT_S:g} s (is the host reachable from here?)"
    server = "Ray Client server" if client else "GCS"
    return f"what answers there is not a Ray cluster's {server} ({code.name}); give the head's {port_option}"


def _token_source() -> str:
    """Where Ray read this process's token from, in Ray's order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def _line(message: str) -> str:
    """The refusal as printed: lines are built short where they are made; a long host name or
    token path still cannot make one wrap past REASON_MAX_CHARS."""
    from spatiotemporal.io.errors import one_line

    return one_line(message)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _first_sentence(err: BaseException) -> str:
    """Ray's token errors say what is wrong, then a paragraph of general advice."""
    return _first_line(err).split(". ")[0].rstrip(".")
