//! The HTTP side of `kvs serve`: `server` accepts connections and drains
//! them at shutdown, `routes` answers each request as the SPEC's API says,
//! `canned` gives hyper's own error answers their Content-Type,
//! `deadlines` disconnects slow and idle clients, `gate` refuses
//! requests without the token before they reach the routes.
//! Nothing here touches a file or blocks a worker thread.

pub mod canned;
pub mod deadlines;
pub mod gate;
pub mod routes;
pub mod server;
