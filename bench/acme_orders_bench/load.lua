-- wrk script of `acme-orders bench`: POST /orders with realistic orders, flat out or at a fixed
-- offered rate.
--
-- Script arguments (after `--` on wrk's command line):
--   1: offered rate in orders/s over all threads; 0 means flat out
--   2: wrk's thread count (a thread's Lua state cannot see it)
--   3: the catalogue's SKUs, comma-separated
--
-- Every order has 1 to 3 distinct lines of qty 1 to 3 and a random customer. At the end, one
-- line "ACME_BENCH_RESULT {json}" on stdout carries wrk's own counts for the caller to parse.

local ffi = require("ffi")

ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } acme_timeval;
int gettimeofday(acme_timeval *tv, void *tz);
]]

local clock = ffi.new("acme_timeval")

-- Wall-clock seconds. os.clock() is CPU time and os.time() whole seconds: neither can pace.
local function now()
    ffi.C.gettimeofday(clock, nil)
    return tonumber(clock.tv_sec) + tonumber(clock.tv_usec) / 1e6
end

-- Runs in the main Lua state once per thread, before the threads start: number them, so each
-- seeds its random numbers differently.
local thread_count = 0
function setup(thread)
    thread_count = thread_count + 1
    thread:set("thread_number", thread_count)
end

local skus = {}
local interval = 0 -- seconds between two requests of this thread; 0 when flat out
local next_slot = 0

function init(args)
    local rate = tonumber(args[1]) or 0
    local threads = tonumber(args[2]) or 1
    for sku in string.gmatch(args[3] or "", "[^,]+") do
        skus[#skus + 1] = sku
    end
    assert(#skus > 0, "no SKUs given to load.lua")
    if rate > 0 then
        -- Each thread offers its share of the rate: one request every threads/rate seconds.
        interval = threads / rate
    end
    local number = thread_number or 1
    math.randomseed(math.floor(now() * 1000) % 2147483647 + number * 7919)
    next_slot = now()
end

-- Called before every request of every connection. The thread's requests take consecutive slots
-- interval apart; a slot already past is taken at once but not made up for later, so a system
-- that falls behind gets fewer orders instead of a burst. The offered rate is the one asked for
-- as long as enough connections are free to take the slots.
function delay()
    if interval == 0 then
        return 0
    end
    local t = now()
    local slot = math.max(next_slot, t)
    next_slot = slot + interval
    return math.floor((slot - t) * 1000 + 0.5)
end

local function order_body()
    -- 1 to 3 distinct SKUs: a partial Fisher-Yates shuffle of a copy of the catalogue.
    local count = math.min(math.random(1, 3), #skus)
    local pool = {}
    for i = 1, #skus do
        pool[i] = skus[i]
    end
    local lines = {}
    for i = 1, count do
        local j = math.random(i, #pool)
        pool[i], pool[j] = pool[j], pool[i]
        lines[i] = string.format('{"sku":"%s","qty":%d}', pool[i], math.random(1, 3))
    end
    local customer = math.random(1, 100000)
    return string.format(
        '{"customer_id":"B%d","email":"b%d@example.com","items":[%s]}',
        customer,
        customer,
        table.concat(lines, ",")
    )
end

local headers = { ["Content-Type"] = "application/json" }

function request()
    return wrk.format("POST", "/orders", headers, order_body())
end

function done(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format(
        'ACME_BENCH_RESULT {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,'
            .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,'
            .. '"max":%d,"mean":%.1f}}\n',
        summary.requests,
        summary.duration,
        errors.connect,
        errors.read,
        errors.write,
        errors.status,
        errors.timeout,
        latency:percentile(50),
        latency:percentile(90),
        latency:percentile(99),
        latency.max,
        latency.mean
    ))
end
