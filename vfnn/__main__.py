from vfnn.cli import main

main()
