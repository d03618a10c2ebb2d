"""`python -m server --port 8001` starts one instance."""

from server.web.main import main

main()
