from __future__ import annotations

import sys
from pathlib import Path

# tests/ helpers (support.py, redis_server.py) are imported as top-level modules
sys.path.insert(0, str(Path(__file__).parent))
