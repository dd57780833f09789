"""Training verification-friendly networks: NBC and the baselines it is compared with.

Modules: ``data`` (datasets in pixel space), ``models`` (architecture strings, model.pt),
``objectives`` (ce, pgd, trades, ibp, crown-ibp, crown-lbp), ``regularisers`` (nbc, rs, nrs, l1), ``attacks``
(PGD and friends), ``schedules``, ``evaluation`` (per-epoch metrics), ``trainer`` (loop, run
directory, resume), ``cli`` (``vfnn train``).  See docs/training.md.
"""
