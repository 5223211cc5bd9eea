from aipt.cli import main

main()
