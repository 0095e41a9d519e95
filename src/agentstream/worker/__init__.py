"""The daemon: consumers, the reaper, the supervisor of one worker process, the
multi-process parent, consumer-name leases, and the monitor that feeds the
instruments of ``agentstream.observe``."""
