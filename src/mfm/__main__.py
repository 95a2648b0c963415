from mfm.cli import main

main()
