//! chimney-wire: TAP devices (IFF_VNET_HDR), private network namespaces for test peers, pcap capture.
