from shards.cli import main

raise SystemExit(main())
