"""The running service put together: the object graph from settings (wiring), the active
mappings and their reload (store, poller, mapping_files), the start-up checks and redrive."""
