"""The application layer: the ``ltv-control`` command line and the steering evaluation.

Built on the public names of the core (:mod:`ltv_control`) and the adapters
(:mod:`ltv_control.adapters`), never the other way round.  ``cli`` parses and prints;
``experiment`` runs an evaluation in steps (``methods`` fits every steerer on one setpoint and
one linearization, ``generation`` and ``metrics`` generate and score, ``profiles`` measures the
β figure, ``report`` writes it); ``settings``, ``datasets``/``tasks`` and ``data`` hold what it
runs on.
"""
