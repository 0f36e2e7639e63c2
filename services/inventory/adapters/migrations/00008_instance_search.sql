-- +goose Up
-- Instance search (a list's query: a piece of the name, the id, the VM id or
-- an address, ignoring case) looks for its text in instance_search_text, the
-- searched fields on one line each, before it checks each field. With a
-- trigram index on that text the search reads the instances that may match
-- instead of the whole table (with 100 000 instances, a scan took 0.5-0.8 s).
-- The index needs the pg_trgm extension (PostgreSQL's contrib; trusted, so
-- the database's owner may create it): where it cannot be had, the search
-- scans the table as it did, and the inventory says so at every start.
CREATE FUNCTION instance_search_text(name text, id uuid, spec jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT name || E'\n' || id::text
        || E'\n' || coalesce(spec->>'vmId', '')
        || E'\n' || coalesce(spec->'addresses'->>'privateIp', '')
        || E'\n' || coalesce(spec->'addresses'->>'publicIp', '')
        || E'\n' || coalesce(spec->'addresses'->>'privateDns', '')
        || E'\n' || coalesce(spec->'addresses'->>'publicDns', '')
        || E'\n' || coalesce(spec->'addresses'->>'hostname', '')
        || E'\n' || coalesce(spec->'addresses'->>'url', '') $$;

-- instance_search_index makes the index if it can and says whether it
-- exists. Every start of the inventory calls it after the migrations
-- (adapters.Migrate), so an extension installed later brings the index then.
-- +goose StatementBegin
CREATE FUNCTION instance_search_index() RETURNS boolean
    LANGUAGE plpgsql
    AS $$
DECLARE
    ops text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'instances_search') THEN
        RETURN true;
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported OR unique_violation THEN
        RAISE NOTICE 'pg_trgm is not available (%): instance search scans the table', SQLERRM;
    END;
    -- The operator class wherever the extension lives (it may have been
    -- created in another schema before).
    SELECT format('%I.%I', n.nspname, c.opcname) INTO ops
        FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace
        JOIN pg_am a ON a.oid = c.opcmethod
        WHERE c.opcname = 'gin_trgm_ops' AND a.amname = 'gin' LIMIT 1;
    IF ops IS NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('CREATE INDEX IF NOT EXISTS instances_search ON instances USING gin (instance_search_text(name, id, spec) %s)', ops);
    EXCEPTION WHEN unique_violation OR duplicate_table THEN
        NULL; -- another inventory made it meanwhile
    END;
    RETURN true;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP INDEX IF EXISTS instances_search;
DROP FUNCTION instance_search_index();
DROP FUNCTION instance_search_text(text, uuid, jsonb);
