"""Verification campaigns: specs from data, batch runs with resume, reports and CI gates.

The data flows one way::

    vfnn specs  -> instances.csv + vnnlib/*.vnnlib + specs.json   (specgen, instances)
    vfnn bench  -> results.jsonl (+ <verifier>/results.csv)       (jobs, runner, backend, store)
    vfnn report -> tables, report.md, figures/*.png                (reports, report, figures)
    vfnn gate   -> exit code + JUnit XML                           (gate)

``results.jsonl`` is the single source of truth: every other output is derived from it.  Its
lines are :class:`vfnn.campaign.store.CampaignRecord` objects, and only ``store`` reads or writes them.
"""
