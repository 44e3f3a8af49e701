#![forbid(unsafe_code)]
//! chimney-netstack: a sans-io Ethernet/ARP/ND/IPv4/IPv6/TCP engine.
