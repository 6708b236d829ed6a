import sys

from bridge.demo.run import main

sys.exit(main())
