"""Sweeps as data: functions that return Tune param spaces built from ``MAMLConfig`` (see ``baselines.py``).

``baselines`` (axes, sizes, matched widths, param_space), ``callbacks`` (``model/num_params``), ``storage``
(write check of ``--storage``), ``progress`` (one line per trial result). No import-time side effects.
"""
