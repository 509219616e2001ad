-- creep 0017: a schedule's ended executions in the order they finished. Each end counted in
-- the schedule's statistics asks whether a success or a failure of the same schedule
-- finished after it (finished_at, then id), so consecutive_failures and last_failure_error
-- follow the order runs finished, not the order the sweep met them. Seeking the schedule
-- and the end reads only the rows after it; task_executions_finished would walk every
-- schedule's ends from that time on (all of one completion batch's ties, per end).
CREATE INDEX task_executions_schedule_ends ON task_executions (task_uid, finished_at, id)
    WHERE finished_at IS NOT NULL;
