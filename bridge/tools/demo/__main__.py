import sys

from bridge.tools.demo.run import main

sys.exit(main())
