"""Ray Serve replicas end to end (ggufworker.deploy): a local Ray cluster of two nodes of one
CPU each, two SmolLM2 replicas (one per node), the real ``openai`` client through Ray Serve's
HTTP proxy.

One cluster and one deployment for the module (starting them costs most of the time).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray

from ggufworker.server.core.models import served_name
from tests.server.conftest import DISTINCT_PROMPTS, free_port

pytestmark = pytest.mark.slow


class Deployment:
    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.model = model
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)

    def replica_requests(self) -> dict[str, float]:
        """Finished requests per replica (device label ``ray:NODE/REPLICA``)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        pattern = r"^ggufworker_replica_requests_total\{([^}]*)\} (\S+)$"
        out: dict[str, float] = {}
        for labels, value in re.findall(pattern, text, re.M):
            device = re.search(r'device="([^"]*)"', labels)
            if device and f'model="{self.model}"' in labels:
                out[device.group(1)] = float(value)
        return out

    def complete(self, prompt: str, max_tokens: int = 8) -> str:
        out = self.client.completions.create(
            model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        return out.choices[0].text


def _engine_replicas() -> list[str]:
    """Names of the live engine replica actors (a dead actor's name is released)."""
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in a["name"] and "engine-" in a["name"]
    )


@pytest.fixture(scope="module")
def deployment(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    from ray import serve
    from ray.cluster_utils import Cluster

    from ggufworker.deploy import DeployOptions, build_app

    home = tmp_path_factory.mktemp("ray-home")
    node = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = DeployOptions(
            settings={
                "models": [str(smollm2_path)],
                "ctx_size": 1024,
                "parallel": 2,
                "threads": 1,
                "offline": True,
                "home": str(home),
                "keep_alive": -1,
            },
            replicas=2,
            replica_cpus=1,
            health_check_period_s=1,
        )
        serve.run(build_app(options), name="ggufworker", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield Deployment(url, served_name(str(smollm2_path)))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def test_requests_spread_over_both_replicas(deployment: Deployment) -> None:
    before = deployment.replica_requests()
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda p=p: answers.append(deployment.complete(p)))
        for p in DISTINCT_PROMPTS[:6]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6
    grew = _delta(before, deployment.replica_requests())
    assert len(grew) == 2, grew  # both replicas answered
    assert sum(grew.values()) == 6
    # one replica per node: the devices name two different Ray nodes
    assert len({device.split("/")[0] for device in grew}) == 2


def test_shared_prefix_sticks_to_one_replica(deployment: Deployment) -> None:
    system = (
        "You are the help desk of a small lighthouse museum on a windy coast. You answer "
        "visitors' questions about opening hours, tickets, the history of the light, the "
        "keepers who lived here, the lenses on display and the walk along the cliff. "
    ) * 3
    before = deployment.replica_requests()
    for question in ("When do you open?", "Is there parking?", "Can dogs come?", "Any cafe?"):
        deployment.complete(f"{system}\nQuestion: {question}\nAnswer:", max_tokens=4)
    grew = _delta(before, deployment.replica_requests())
    assert list(grew.values()) == [4.0], grew


def test_other_api_surfaces_through_ray(deployment: Deployment) -> None:
    chat = deployment.client.chat.completions.create(
        model=deployment.model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.choices[0].message.content
    stream = deployment.client.chat.completions.create(
        model=deployment.model,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=8,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    ollama = httpx.post(
        f"{deployment.url}/api/chat",
        json={
            "model": deployment.model,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "options": {"num_predict": 6},
        },
        timeout=120,
    )
    assert ollama.status_code == 200 and ollama.json()["message"]["content"]
    anthropic = httpx.post(
        f"{deployment.url}/v1/messages",
        json={
            "model": deployment.model,
            "max_tokens": 6,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        timeout=120,
    )
    assert anthropic.status_code == 200 and anthropic.json()["content"][0]["text"]
    models = deployment.client.models.list()
    assert deployment.model in [m.id for m in models.data]


def _long_stream(
    deployment: Deployment, prompt: str, outcome: dict[str, Any], seen: dict[str, int]
) -> None:
    """Stream a long completion; ``seen[prompt]`` counts chunks as they come, ``outcome[prompt]``
    is the chunk count at the end or the error that ended it."""
    seen[prompt] = 0
    try:
        stream = deployment.client.completions.create(
            model=deployment.model, prompt=prompt, max_tokens=500, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        for _ in stream:
            seen[prompt] += 1
        outcome[prompt] = seen[prompt]
    except openai.APIError as exc:
        outcome[prompt] = exc


def test_killed_replica_fails_its_streams_cleanly_and_comes_back(
    deployment: Deployment,
) -> None:
    """Two long streams (one per replica); one replica's actor is killed mid-answer: its
    stream ends with an error, the other finishes, requests sent afterwards all succeed on
    the survivor, and Ray starts a replacement replica."""
    replicas = _engine_replicas()
    assert len(replicas) == 2
    outcome: dict[str, Any] = {}
    seen: dict[str, int] = {}
    prompts = ["Write a long story about a fox.", "Write a long poem about the sea."]
    threads = [
        threading.Thread(target=_long_stream, args=(deployment, p, outcome, seen)) for p in prompts
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not (len(seen) == 2 and min(seen.values()) >= 4):  # both streams are generating
        assert time.monotonic() < deadline and not outcome, (seen, outcome)
        time.sleep(0.05)
    victim = ray.get_actor(replicas[0], namespace="serve")
    ray.kill(victim, no_restart=True)
    # sent while the dead replica is still listed: none is lost
    answers = [deployment.complete(p) for p in DISTINCT_PROMPTS[:4]]
    assert len(answers) == 4
    for t in threads:
        t.join(120)
    failed = [p for p, v in outcome.items() if isinstance(v, BaseException)]
    assert len(outcome) == 2 and len(failed) == 1, outcome
    survivor = next(v for v in outcome.values() if not isinstance(v, BaseException))
    assert survivor > 1
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = _engine_replicas()
        if len(now) == 2 and replicas[0] not in now:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"Ray did not replace the killed replica: {_engine_replicas()}")
    assert deployment.complete("After the restart,")
