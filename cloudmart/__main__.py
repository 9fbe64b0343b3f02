from cloudmart.cli import main

main()
