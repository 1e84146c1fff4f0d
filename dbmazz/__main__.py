import sys

from dbmazz.cli import main

sys.exit(main())
