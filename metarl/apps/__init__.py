"""The application layer: the ``metarl`` commands (train, evaluate, sweep, report, dynamics), the run folder,
records, provenance and Ray session helpers. The top of the one-way chain

    metarl core (torch + gymnasium)  ->  rllib_ext (RLlib)  ->  tune_configs (Tune)  ->  metarl.apps

Nothing below imports from here (``tests/test_layers.py`` walks every import).
"""
