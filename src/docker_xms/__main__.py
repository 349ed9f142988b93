from docker_xms.cli import main

main()
