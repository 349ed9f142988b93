import sys

from docker_xms.entry import main

sys.exit(main())
