import sys

from sb3_mpo.benchmark.cli import main

sys.exit(main())
