//! The flagship in a real browser (Debian's chromium through chromedriver, driven over
//! WebDriver): ana's device goes offline and she edits a work order; ben edits the same
//! field differently and another field; ana comes back online, the conflict appears on
//! her page, she chooses per field, and both pages converge with nothing pending. The
//! network badge follows the switch. Every wait is on a condition with a timeout, and a
//! failed expectation fails with the page's text; each step leaves a screenshot under
//! `target/tmp/field-service-browser/`.
//!
//! Needs `chromedriver` and `chromium` (`apt-get install chromium chromium-driver`;
//! `.ci/run` installs them). Without them the test says it was skipped, and under
//! `CI=true` it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use field_service::Options;
use field_service::model::WorkOrder;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn tool(name: &str, env: &str) -> Option<PathBuf> {
    std::env::var_os(env).map(PathBuf::from).or_else(|| {
        ["/usr/bin", "/usr/local/bin"].iter().map(|dir| Path::new(dir).join(name)).find(|path| path.exists())
    })
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver(chromedriver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "chromedriver never listened on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { child, url: format!("http://127.0.0.1:{port}") }
}

async fn browser(driver: &Driver, chromium: &Path, width: u32, height: u32) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// One browser on one device's page, with what a failure needs to say.
struct Page {
    name: &'static str,
    client: Client,
    shots: PathBuf,
}

impl Page {
    async fn shot(&self, step: &str) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.shots.join(format!("{step}-{}.png", self.name)), png);
        }
    }

    /// Fails the test with the page's text and a screenshot.
    async fn fail(&self, what: &str) -> ! {
        self.shot("failed").await;
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        };
        panic!("{}: {what}\n--- the page says ---\n{text}", self.name);
    }

    /// Waits until the text of `css` satisfies `check`.
    async fn until_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.ok(),
                Err(_) => None,
            };
            if let Some(text) = text {
                if check(&text) {
                    return text;
                }
                last = text;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("{what} (`{css}` said {last:?})")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn until_present(&self, css: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.client.find(Locator::Css(css)).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                self.fail(what).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.until_present(css, &format!("nothing to click at `{css}`")).await;
        if let Err(e) = self.client.find(Locator::Css(css)).await.unwrap().click().await {
            self.fail(&format!("clicking `{css}`: {e}")).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.until_present(css, &format!("no field `{css}`")).await;
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Opens a work order's form from the list.
    async fn open_order(&self, id: &str) {
        self.click(&format!("tr.row[data-id='{id}'] td.site")).await;
        self.until_present(&format!("#order-form[data-post='/order/{id}']"), "the work order's form").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_conflict_made_offline_is_settled_field_by_field_and_both_pages_converge() {
    let (Some(chromedriver), Some(chromium)) = (tool("chromedriver", "CHROMEDRIVER"), tool("chromium", "CHROMIUM"))
    else {
        assert!(std::env::var("CI").is_err(), "CI must run the browser test: install chromium and chromium-driver");
        println!("SKIPPED: chromedriver or chromium not found (apt-get install chromium chromium-driver)");
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("field-service-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = field_service::start(Options { orders: 60, products: 20, ..Options::new(dir.path()) }).await.unwrap();
    let driver = driver(&chromedriver).await;
    let ana = Page { name: "ana", client: browser(&driver, &chromium, 1280, 900).await, shots: shots.clone() };
    let ben = Page { name: "ben", client: browser(&driver, &chromium, 1280, 900).await, shots: shots.clone() };
    ana.client.goto(&app.devices[0].url()).await.unwrap();
    ben.client.goto(&app.devices[1].url()).await.unwrap();
    for page in [&ana, &ben] {
        page.until_text("#network", "online at first", |t| t == "online").await;
        page.until_text("#freshness", "the first sync", |t| t == "up to date").await;
        page.until_present("tr.row[data-id='wo-0']", "the work orders").await;
        page.shot("01-start").await;
    }
    let wo0 = app.devices[0].engine.collection::<WorkOrder>().unwrap().get("wo-0").await.unwrap().unwrap();

    // Ana goes offline: the badge follows the switch, and her edit waits.
    ana.click("#online-switch").await;
    ana.until_text("#network", "offline after the switch", |t| t == "offline").await;
    ana.open_order("wo-0").await;
    ana.type_into("#order-form input[name=task]", "replace filter and seal (ana)").await;
    ana.click("#save").await;
    ana.until_text("#pending", "ana's edit queued", |t| t == "1").await;
    ana.until_text("tr.row[data-id='wo-0'] .state", "the row marked pending", |t| t == "pending").await;
    ana.shot("02-offline-edit").await;

    // Ben changes the same field differently, and the notes; it reaches the server.
    ben.open_order("wo-0").await;
    ben.type_into("#order-form input[name=task]", "replace filter only (ben)").await;
    ben.type_into("#order-form textarea[name=notes]", "gate code 4711").await;
    ben.click("#save").await;
    ben.until_text("tr.row[data-id='wo-0']", "ben's edit acknowledged", |t| {
        t.contains("replace filter only (ben)") && t.contains("synced")
    })
    .await;
    ben.shot("03-other-edit").await;

    // Ana comes back: the conflict appears, with the task both changed highlighted.
    ana.click("#online-switch").await;
    ana.until_text("#network", "online after the switch", |t| t == "online").await;
    ana.until_text("#conflict-count", "the conflict counted", |t| t == "1").await;
    ana.until_present(".conflict tr.both[data-field='/task']", "the task highlighted as changed on both sides").await;
    ana.until_text(".conflict", "both sides shown", |t| {
        t.contains("replace filter and seal (ana)")
            && t.contains("replace filter only (ben)")
            && t.contains("gate code 4711")
    })
    .await;
    ana.until_text("tr.row[data-id='wo-0'] .state", "the row marked conflict", |t| t == "conflict").await;
    ana.shot("04-conflict").await;
    ben.shot("04-conflict").await;
    side_by_side(&shots);

    // She keeps ben's task; ben's notes come along as only he changed them.
    ana.click(".conflict input[name='field:/task'][value='server']").await;
    ana.click(".conflict button.apply-fields").await;
    ana.until_text("#conflict-count", "the conflict settled", |t| t == "0").await;
    ana.until_text("#conflicts", "the conflicts panel empty", |t| t.contains("No conflicts.")).await;
    ana.until_text("#pending", "the resolution sent", |t| t == "0").await;
    for page in [&ana, &ben] {
        page.until_text("tr.row[data-id='wo-0']", "both pages on ben's task", |t| {
            t.contains("replace filter only (ben)") && t.contains("synced")
        })
        .await;
        page.until_text("#freshness", "up to date again", |t| t == "up to date").await;
        page.shot("05-converged").await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let on = |i: usize| {
            let engine = app.devices[i].engine.clone();
            async move { engine.collection::<WorkOrder>().unwrap().get("wo-0").await.unwrap().unwrap() }
        };
        let (a, b) = (on(0).await, on(1).await);
        if a == b {
            assert_eq!(
                (a.task.as_str(), a.notes.as_str(), a.site.as_str()),
                ("replace filter only (ben)", "gate code 4711", wo0.site.as_str())
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stores did not converge: {a:?} / {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ana.client.close().await.unwrap();
    ben.client.close().await.unwrap();
    app.stop().await;
}

/// Ana's and ben's pages in conflict, side by side at half size: the picture README
/// shows (`target/tmp/field-service-browser/conflict-side-by-side.png`).
fn side_by_side(shots: &Path) {
    let half = |name: &str| {
        let page = image::open(shots.join(name)).unwrap().to_rgb8();
        image::imageops::resize(&page, page.width() / 2, page.height() / 2, image::imageops::FilterType::Triangle)
    };
    let (ana, ben) = (half("04-conflict-ana.png"), half("04-conflict-ben.png"));
    let mut both = image::RgbImage::from_pixel(
        ana.width() + ben.width() + 4,
        ana.height().max(ben.height()),
        image::Rgb([150, 150, 150]),
    );
    image::imageops::replace(&mut both, &ana, 0, 0);
    image::imageops::replace(&mut both, &ben, i64::from(ana.width()) + 4, 0);
    both.save(shots.join("conflict-side-by-side.png")).unwrap();
}
