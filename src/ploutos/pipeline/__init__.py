"""The pipeline every entry point shares.

- :mod:`.run`: dataset -> walk-forward plan -> tasks (through an executor) -> aggregate -> report;
- :mod:`.task`: one (fold, member) task: node store, training, records;
- :mod:`.record`: a trained member's model, evaluation and task file, and its fold's ensemble;
- :mod:`.validate`: every stage once on a tiny budget.

It sits above :mod:`ploutos.train` and :mod:`ploutos.results`, which never import each other.
"""
