-- placeholder for the migration number reserved elsewhere (local testing only)
SELECT 1;
