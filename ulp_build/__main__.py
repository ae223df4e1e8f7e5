import sys

from ulp_build.cli import main

sys.exit(main())
