"""Package-level contracts: no Ray at import, the CLI help, and the examples of the project's ORIGINAL README (before
the RLlib rewrite) still run unchanged except that they import from ``metarl``: an API-compatibility check for
code written against them. The current README's snippets, CLI examples and tables: tests/test_readme.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only add contention on shared CI machines
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_core_imports_leave_ray_out():
    proc = _python("""
        import sys
        import metarl, metarl.models, metarl.maml, metarl.adaptation, metarl.tasks, metarl.apps.dynamics, metarl.cli
        from metarl import StateSpaceModel, MetaMAML, Adapter, AdaptationConfig
        print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
    """)
    assert proc.stdout.strip() == "[]"


def test_python_m_metarl_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "metarl", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("dynamics", "train", "evaluate", "sweep", "report"):
        assert command in proc.stdout


ORIGINAL_README_SSM = """
import torch
from metarl import StateSpaceModel

model = StateSpaceModel(state_dim=128, input_dim=64, output_dim=32, hidden_dim=128, device='cpu')
batch_size = 4
input_x = torch.randn(batch_size, 64)
current_hidden = model.init_hidden(batch_size)

# Forward pass requires current state and returns next state
output, next_hidden = model(input_x, current_hidden)
print(output.shape)       # torch.Size([4, 32])
print(next_hidden.shape)  # torch.Size([4, 128])
"""

ORIGINAL_README_MAML = """
import torch
import torch.nn.functional as F
from metarl import MetaMAML, StateSpaceModel

model = StateSpaceModel(state_dim=64, input_dim=32, output_dim=16, device='cpu')
maml = MetaMAML(model, inner_lr=0.01, outer_lr=0.001)

# Time series input: (batch=4, time_steps=10, features=32)
support_x = torch.randn(4, 10, 32)
support_y = torch.randn(4, 10, 16)
query_x = torch.randn(4, 10, 32)
query_y = torch.randn(4, 10, 16)

# Prepare tasks as a list of tuples
tasks = []
for i in range(4):
    tasks.append((support_x[i:i+1], support_y[i:i+1], query_x[i:i+1], query_y[i:i+1]))

# Initialize hidden state
initial_hidden = model.init_hidden(batch_size=4)

# Call meta_update with tasks list and initial state
loss = maml.meta_update(tasks=tasks, initial_hidden_state=initial_hidden, loss_fn=F.mse_loss)
print(f"Meta Loss: {loss:.4f}")
"""

ORIGINAL_README_ADAPTER = """
import torch
from metarl import Adapter, AdaptationConfig, StateSpaceModel

# Model output dim must match target 'y'
model = StateSpaceModel(state_dim=64, input_dim=32, output_dim=32, device='cpu')
config = AdaptationConfig(learning_rate=0.01, num_steps=5)
adapter = Adapter(model=model, config=config, device='cpu')

# Initialize hidden state
hidden_state = model.init_hidden(batch_size=1)

# Adaptation loop
for step in range(10):
    x = torch.randn(1, 32)
    y_target = torch.randn(1, 32)

    # Store current state for adaptation call
    current_hidden_state_for_adapt = hidden_state

    # Get next state prediction (optional)
    with torch.no_grad():
        output, hidden_state = model(x, current_hidden_state_for_adapt)

    # Call update_step with x, target, and state_t
    loss, steps_taken = adapter.update_step(
        x=x,
        y=y_target,
        hidden_state=current_hidden_state_for_adapt
    )
    print(f"Adapt Call {step}, Loss: {loss:.4f}, Internal Steps: {steps_taken}")
"""


def test_original_readme_ssm_example():
    lines = _python(ORIGINAL_README_SSM).stdout.split("\n")
    assert lines[:2] == ["torch.Size([4, 32])", "torch.Size([4, 128])"]


def test_original_readme_maml_example():
    """4 tasks of batch 1 with a (4, state_dim) initial state: the "one row per task" reading."""
    out = _python(ORIGINAL_README_MAML).stdout.strip()
    assert out.startswith("Meta Loss: ")
    assert math.isfinite(float(out.split(": ")[1]))


def test_original_readme_adapter_example():
    lines = _python(ORIGINAL_README_ADAPTER).stdout.strip().split("\n")
    assert len(lines) == 10
    assert all(line.endswith("Internal Steps: 5") for line in lines)
    assert "nan" not in " ".join(lines)
