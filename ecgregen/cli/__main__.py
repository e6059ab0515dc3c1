"""`python -m ecgregen.cli`: the `ecgregen` command where the console script is not on PATH (torchrun, benchmarks)."""

from ecgregen.cli import main

main()
