from dlactor.cli import main

main()
