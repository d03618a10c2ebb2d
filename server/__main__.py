"""`python -m server --port 8001` starts one instance."""

from server.main import main

main()
