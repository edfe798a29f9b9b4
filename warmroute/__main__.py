from warmroute.cli import main

main()
