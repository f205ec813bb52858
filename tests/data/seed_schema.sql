-- The "Proposed Schema" DDL of the migration plan, verbatim; only reordered so that
-- `users` exists before `searches` references it, with the plan's partial index last.
CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    password_hash VARCHAR(255),  -- Or use OAuth
    display_name VARCHAR(100),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    last_login TIMESTAMP WITH TIME ZONE,
    is_active BOOLEAN DEFAULT TRUE
);

CREATE INDEX idx_users_email ON users(email);

CREATE TABLE searches (
    id SERIAL PRIMARY KEY,
    query TEXT NOT NULL,
    search_type VARCHAR(20) NOT NULL,  -- 'sold' or 'active'
    filters JSONB,  -- {raw_only: bool, base_only: bool, exclude_auto: bool}
    pages_scraped INTEGER,
    items_count INTEGER,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    execution_time_ms INTEGER,
    cache_hit BOOLEAN DEFAULT FALSE,
    user_id INTEGER REFERENCES users(id)  -- Future: user tracking
);

CREATE INDEX idx_searches_query ON searches(query);
CREATE INDEX idx_searches_created_at ON searches(created_at);
CREATE INDEX idx_searches_user_id ON searches(user_id);

CREATE TABLE price_snapshots (
    id SERIAL PRIMARY KEY,
    card_identifier TEXT NOT NULL,  -- Normalized card name
    search_id INTEGER REFERENCES searches(id),
    snapshot_date DATE NOT NULL,

    -- Aggregated pricing
    fmv_low NUMERIC(10, 2),
    fmv_high NUMERIC(10, 2),
    market_value NUMERIC(10, 2),
    quick_sale NUMERIC(10, 2),
    patient_sale NUMERIC(10, 2),

    -- Statistics
    sample_size INTEGER,
    min_price NUMERIC(10, 2),
    max_price NUMERIC(10, 2),
    avg_price NUMERIC(10, 2),
    volume_confidence VARCHAR(20),

    -- Market intelligence
    parallel_analysis JSONB,
    grading_analysis JSONB,

    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),

    UNIQUE(card_identifier, snapshot_date)
);

CREATE INDEX idx_price_snapshots_card ON price_snapshots(card_identifier);
CREATE INDEX idx_price_snapshots_date ON price_snapshots(snapshot_date);

CREATE TABLE listing_cache (
    id SERIAL PRIMARY KEY,
    item_id VARCHAR(50) UNIQUE NOT NULL,
    title TEXT NOT NULL,
    price NUMERIC(10, 2),
    listing_type VARCHAR(20),  -- 'auction', 'buy_it_now'
    condition VARCHAR(50),
    sold BOOLEAN,
    sold_date TIMESTAMP WITH TIME ZONE,

    -- Minimal metadata (eBay ToS compliant)
    bids INTEGER,
    watchers INTEGER,

    -- Caching
    first_seen TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    last_updated TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    ttl TIMESTAMP WITH TIME ZONE,  -- When to refresh

    -- Search association
    search_id INTEGER REFERENCES searches(id)
);

CREATE INDEX idx_listing_cache_item_id ON listing_cache(item_id);
CREATE INDEX idx_listing_cache_ttl ON listing_cache(ttl);
CREATE INDEX idx_listing_cache_sold_date ON listing_cache(sold_date);

CREATE TABLE saved_searches (
    id SERIAL PRIMARY KEY,
    user_id INTEGER REFERENCES users(id) NOT NULL,
    name VARCHAR(100) NOT NULL,
    query TEXT NOT NULL,
    filters JSONB,
    alert_enabled BOOLEAN DEFAULT FALSE,
    alert_threshold NUMERIC(10, 2),  -- Alert if price drops below
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    last_run TIMESTAMP WITH TIME ZONE,

    UNIQUE(user_id, name)
);

CREATE INDEX idx_saved_searches_user ON saved_searches(user_id);

CREATE INDEX idx_active_listings ON listing_cache(item_id)
WHERE sold = FALSE;
