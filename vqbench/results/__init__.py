"""What is made of finished runs: suites that run them, Table 1 and the figures.

- :mod:`.suite`: named lists of runs (``suites:`` in registry.yaml), resumable;
- :mod:`.table`: Table 1 of the GM-VQ paper, our numbers beside the paper's;
- :mod:`.suite_table`: the table of any other suite; :mod:`.compare`: which differences exceed noise;
- :mod:`.run_records`: finished runs from run folders or result rows (curves in ``history``);
- :mod:`.publish`: a suite's rows copied into the committed ``published/``;
- :mod:`.plots`: PNG figures. Imported on its own (``vqbench.results.plots``), not here:
  it loads matplotlib and selects its Agg backend, which importing Table 1 should not do.

The rows they read are :mod:`vqbench.rows`, the results store every finished run writes to.
"""
from .suite import PlannedRun, SuiteReport, list_suites, plan_suite, run_suite, suite_hashes, suite_spec
from .suite_table import SuiteTable, build_suite_table, build_table
from .table import Table1, build_table1, table1_methods, to_csv, to_markdown

__all__ = ["PlannedRun", "SuiteReport", "SuiteTable", "Table1", "build_suite_table", "build_table", "build_table1", "list_suites", "plan_suite", "run_suite",
           "suite_hashes", "suite_spec", "table1_methods", "to_csv", "to_markdown"]
