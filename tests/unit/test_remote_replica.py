"""A remote replica's socket (issue 22): TCP, a CURVE server that admits only the frontend's key; the Ray
actor options and environment a replica gets; vLLM's Ray executor arguments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from berth_server.curve_keys import (
    CurveClient,
    keypair,
    public_of,
    read_client_keys,
    secure_client,
    write_client_keys,
)
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.remote import RemoteBinding, remote_binding, secure_router
from berth_server.ray_placement import actor_options, replica_environment
from berth_server.settings import Settings


def test_client_keys_file_is_private(tmp_path: Path) -> None:
    public, secret = write_client_keys(tmp_path)
    assert read_client_keys(tmp_path) == (public, secret) and public_of(secret) == public
    assert (tmp_path / "curve-client.json").stat().st_mode & 0o077 == 0
    assert read_client_keys(tmp_path / "absent") is None


def test_remote_binding_needs_keys() -> None:
    assert remote_binding(Settings.from_env({})) is None
    with pytest.raises(RuntimeError, match="never listens without CURVE keys"):
        remote_binding(Settings.from_env({"BERTH_BIND_HOST": "10.0.0.2"}))
    binding = remote_binding(Settings.from_env({"BERTH_BIND_HOST": "10.0.0.2", "BERTH_CURVE_SERVER_SECRET": "s" * 40,
                                                "BERTH_CURVE_CLIENT_PUBLIC": "p" * 40}))
    assert binding is not None and binding.address == "tcp://10.0.0.2:*"


def test_the_remote_socket_admits_only_the_frontends_key() -> None:
    server_public, server_secret = keypair()
    client_public, client_secret = keypair()
    stranger_public, stranger_secret = keypair()

    async def scenario() -> dict[str, bytes | None]:
        context = zmq.asyncio.Context()
        router = context.socket(zmq.ROUTER)
        authenticator = secure_router(router, context, RemoteBinding("127.0.0.1", server_secret, client_public))
        router.bind("tcp://127.0.0.1:*")
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        peers = {
            "no keys": None,
            "unknown key": CurveClient(server_public=server_public, public=stranger_public, secret=stranger_secret),
            "frontend": CurveClient(server_public=server_public, public=client_public, secret=client_secret),
        }
        sockets = []
        for name, keys in peers.items():
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                secure_client(dealer, keys)  # type: ignore[arg-type]
            dealer.connect(endpoint)
            sockets.append(dealer)
            try:
                await asyncio.wait_for(dealer.send(name.encode()), 1.0)
            except asyncio.TimeoutError:
                pass  # a peer whose handshake fails may not even queue the message
        received: dict[str, bytes | None] = {}
        deadline = asyncio.get_running_loop().time() + 3.0
        while asyncio.get_running_loop().time() < deadline:
            if await router.poll(100):
                _, body = await router.recv_multipart()
                received[body.decode()] = body
        for socket in [*sockets, router]:
            socket.close(0)
        authenticator.stop()
        context.term()
        return received

    received = asyncio.run(scenario())
    assert list(received) == ["frontend"]  # neither the key-less peer nor an unknown key got a message through


def test_actor_options() -> None:
    config = ModelLaunchConfig(uid="m", source="s", model_name="m", replica=2, n_cpu=0.5,
                               ray_resources={"berth_b": 1.0})
    assert actor_options(config, sm_num_gpus=8, cluster_gpus=0) == {
        "num_cpus": 0.5, "num_gpus": 0, "resources": {"berth_b": 1.0}, "scheduling_strategy": "SPREAD",
        "max_restarts": 0, "max_concurrency": 4}
    assert actor_options(config, sm_num_gpus=8, cluster_gpus=16)["num_gpus"] == 4  # SM_NUM_GPUS / replicas
    pinned = ModelLaunchConfig(uid="m", source="s", model_name="m", replica=2, n_gpu=1)
    assert actor_options(pinned, sm_num_gpus=8, cluster_gpus=16)["num_gpus"] == 1
    assert actor_options(pinned, sm_num_gpus=8, cluster_gpus=16)["num_cpus"] == 1.0


def test_replica_environment_forwards_settings_not_node_paths(tmp_path: Path) -> None:
    settings = Settings(runtime_dir=tmp_path, hf_model_id="org/model")
    env = replica_environment(settings, {"HF_TOKEN": "t", "AWS_REGION": "eu-west-1", "PATH": "/x",
                                         "BERTH_CURVE_SERVER_SECRET": "leak"})
    assert env["HF_TOKEN"] == "t" and env["AWS_REGION"] == "eu-west-1" and env["HF_MODEL_ID"] == "org/model"
    assert "PATH" not in env and "BERTH_RUNTIME_DIR" not in env and "BERTH_CURVE_SERVER_SECRET" not in env


def test_vllm_ray_executor_arguments() -> None:
    from berth_server.engines.vllm_params import ray_executor_kwargs
    from berth_server.errors import InvalidRequest

    one = ModelLaunchConfig(uid="m", source="s", model_name="m")
    assert ray_executor_kwargs(one, cpu=True) == {}
    big = ModelLaunchConfig(uid="m", source="s", model_name="m", n_worker=2, tensor_parallel_size=8)
    assert ray_executor_kwargs(big, cpu=False) == {"distributed_executor_backend": "ray", "pipeline_parallel_size": 2}
    with pytest.raises(InvalidRequest, match="CPU build cannot run"):
        ray_executor_kwargs(big, cpu=True)
