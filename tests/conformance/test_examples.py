"""The seed's three examples (``examples/*.py``) and the README's quick start run on every
backend that supports their features — and on one that does not, they stop with
``Unsupported`` naming the missing feature (never a silent degrade).

Each program runs in a subprocess with ``$TIDEMQ_URL`` set (the examples read it); the
README's first Python block runs with its ``"./data"`` replaced by the URL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tidemq

ROOT = Path(__file__).resolve().parents[2]

# program -> the capability-table features it uses
EXAMPLES: dict[str, tuple[str, ...]] = {
    "pubsub.py": ("partitions", "key_partitioning", "key_ordering", "batch_publish",
                  "mode_ordered"),
    "simple_queue.py": ("priority", "nack_delay", "max_deliveries_dlq", "delivery_count"),
    "orders_routing.py": ("routing_filter_exact", "nack_delay", "mode_shared"),
}
README_FEATURES = ("partitions", "key_partitioning", "batch_publish", "routing_filter_exact",
                   "ack_confirmation", "mode_shared")


@pytest.fixture(params=["memory", "nats", "amqp"])
def transport(request: pytest.FixtureRequest) -> str:
    """The default URL of the examples (memory://) and the backends of other engines (the
    folder and server transports run the same client code as memory://)."""
    return str(request.param)


def _missing(url: str, features: tuple[str, ...]) -> list[str]:
    with tidemq.Client(url) as mq:
        table = mq.capabilities()
    return [f for f in features if table[f].support == "unsupported"]


def _run(script: Path, url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TIDEMQ_URL=url, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)


def _check(proc: subprocess.CompletedProcess[str], missing: list[str]) -> None:
    if missing:
        assert proc.returncode != 0, f"ran without {missing}:\n{proc.stdout}"
        assert "Unsupported" in proc.stderr and missing[0] in proc.stderr, proc.stderr[-2000:]
    else:
        assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_where_its_features_are_supported(name: str, url: str,
                                                       tmp_path: Path) -> None:
    missing = _missing(url, EXAMPLES[name])
    _check(_run(ROOT / "examples" / name, url, tmp_path), missing)


def test_readme_quick_start_runs(url: str, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None and 'tidemq.Client("./data")' in block.group(1)
    code = block.group(1).replace('tidemq.Client("./data")', "tidemq.Client(os.environ["
                                  '"TIDEMQ_URL"])')
    script = tmp_path / "quick_start.py"
    script.write_text("import os\n" + code)
    proc = _run(script, url, tmp_path)
    _check(proc, _missing(url, README_FEATURES))
    assert "order_id" in proc.stdout, proc.stdout
