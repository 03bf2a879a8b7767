"""Pipeline stages: each reads its input state from the ledger and writes one event per sample.

They run the same from the CLI and from Airflow tasks; the DAG files only call them.
"""
