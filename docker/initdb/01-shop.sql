-- A small sample schema for docker/compose.yml (runs once, on an empty data volume).
CREATE TABLE public.customers (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    country char(2),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    status text NOT NULL,
    total numeric(12,2),
    details jsonb,
    placed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.customers (id, email, country)
SELECT g, 'user' || g || '@example.com', (ARRAY['DE','FR','US','BR'])[1 + g % 4]
FROM generate_series(1, 1000) g;
INSERT INTO public.orders (id, customer_id, status, total, details)
SELECT g, 1 + g % 1000, (ARRAY['new','paid','shipped'])[1 + g % 3], (g % 500) + 0.99,
       jsonb_build_object('channel', (ARRAY['web','app'])[1 + g % 2], 'items', g % 5 + 1)
FROM generate_series(1, 5000) g;
