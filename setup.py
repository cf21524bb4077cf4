"""metarl: gradient-based meta-reinforcement learning with recurrent and state-space policies, on Ray.

Dependency *ranges* live here; the exact pins that made our results live in ``constraints.txt``
(``pip install -c constraints.txt -e .[dev]``; ``make test`` does this for you).
"""

from setuptools import find_packages, setup

setup(
    name="metarl",
    version="0.1.0",
    description="MAML for RL with recurrent and state-space policies on RLlib's new API stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["metarl", "metarl.*", "rllib_ext", "rllib_ext.*", "tune_configs", "tune_configs.*"]),
    install_requires=[
        "torch>=2.4,<3",
        "ray[default,rllib,tune]>=2.60,<2.61",
        "gymnasium[mujoco]>=1.2.2,<1.3",
        "mujoco>=3.3,<3.4",  # metaworld 3.1.1 pins 3.3.0
        "metaworld>=3.1.1,<3.2",
        "numpy>=1.26,<3",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "dev": ["pytest==9.2.0", "pytest-timeout==2.4.0", "ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["metarl=metarl.cli:main"]},
)
