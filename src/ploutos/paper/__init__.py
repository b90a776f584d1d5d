"""Paper trading through alpaca-py: the latest fold's ensemble on the newest bars (``ploutos paper``).

- :mod:`ploutos.paper.broker`: orders through ``TradingClient`` with deterministic client order ids;
- :mod:`ploutos.paper.state`: ``RUN_DIR/paper/state.json`` (atomic) and the orders journal;
- :mod:`ploutos.paper.risk`: max weight, daily turnover, drawdown halt, the live guard;
- :mod:`ploutos.paper.runner`: the policy, the decision path and the live loop;
- :mod:`ploutos.paper.replay`: ``--dry-run``, the same decisions replayed over the test window.
"""
