"""What lock-step batching can buy on this machine, without Ray or HTTP (ddit_export/serve/batching_ceiling.py).

    python tools/batching_ceiling.py engines/demo --batch 8 --rounds 5 --json ceiling.json
"""

import sys

from ddit_export.serve.batching_ceiling import main

if __name__ == "__main__":
    sys.exit(main())
