"""The `adapterbank` command line (installed as the `adapterbank_cli` package)."""
