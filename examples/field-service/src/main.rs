//! `cargo run -p field-service`: the flagship on the embedded defaults. Prints the two
//! devices' URLs and runs until Ctrl-C. `FIELD_SERVICE_PORTS=8801,8802` picks the ports.

fn ports() -> [u16; 2] {
    let from_env = std::env::var("FIELD_SERVICE_PORTS").ok().and_then(|text| {
        let ports: Vec<u16> = text.split(',').filter_map(|p| p.trim().parse().ok()).collect();
        <[u16; 2]>::try_from(ports).ok()
    });
    from_env.unwrap_or([8801, 8802])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = field_service::Options { ports: ports(), progress: true, ..field_service::Options::new(dir.path()) };
    let app = field_service::start(options).await?;
    println!("offsync field service: reference server at {} (SQLite in {})", app.server.url(), dir.path().display());
    for device in &app.devices {
        println!("  {:<16} {}", device.name, device.url());
    }
    println!("Open both pages, switch one device offline, edit the same work order on both, switch it back on.");
    println!("Ctrl-C stops everything.");
    tokio::signal::ctrl_c().await?;
    app.stop().await;
    Ok(())
}
