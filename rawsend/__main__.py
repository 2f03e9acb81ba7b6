from rawsend.cli import main

main()
