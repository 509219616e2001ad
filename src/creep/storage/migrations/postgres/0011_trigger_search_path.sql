-- creep 0011: the task_queue trigger functions resolve task_queue in the schema that holds
-- them, whatever search_path the session that changes tasks runs with. Unpinned, a session
-- with another search_path (an operator's `UPDATE myschema.tasks ...`, a tool connected to
-- the default schema) would have the trigger write another schema's task_queue or fail.
-- Pinned to the schema these functions were created in (current_schema() here, as it was
-- for 0010), then pg_temp, so no temporary table can shadow it.
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['task_queue_on_insert()', 'task_queue_on_update()',
                              'task_queue_on_delete()', 'task_queue_on_truncate()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', fn, current_schema());
    END LOOP;
END
$$;
