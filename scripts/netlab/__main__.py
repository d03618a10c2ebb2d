"""`python -m scripts.netlab`: what scripts/lab runs."""

from scripts.netlab.commands import main

main()
