import sys

from jaxviz.cli import main

sys.exit(main())
