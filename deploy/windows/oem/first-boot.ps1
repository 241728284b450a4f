# First boot (run once by install.bat at the end of the unattended install, as the auto-logon user):
# install Python, copy the provisioning scripts to C:\bridge\bin, register the tasks that run
# every-boot.ps1 at each logon and every 5 minutes (to bring back a dead supervisor), then run it.

. (Join-Path $PSScriptRoot 'common.ps1')
Initialize-BridgeFolders
Write-BridgeLog 'first boot: provisioning the bridge'

Wait-Share

# --- Python ---------------------------------------------------------------------------------------
$python = Join-Path $PythonDir 'python.exe'
if (-not (Test-Path $python)) {
    $installerName = "python-$PythonVersion-amd64.exe"
    $installer = Join-Path $ShareInstallers $installerName
    if (-not (Test-Path $installer)) {
        # Not dropped in the installers folder: fetch the official one (the VM has outbound access).
        $installer = Join-Path $env:TEMP $installerName
        $url = "https://www.python.org/ftp/python/$PythonVersion/$installerName"
        Write-BridgeLog "downloading $url"
        [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
        Invoke-WebRequest -Uri $url -OutFile $installer -UseBasicParsing
    }
    Write-BridgeLog "installing Python $PythonVersion into $PythonDir"
    $arguments = @('/quiet', 'InstallAllUsers=1', 'PrependPath=0', 'Include_test=0', 'Include_launcher=0',
        "TargetDir=$PythonDir")
    $proc = Start-Process -FilePath $installer -ArgumentList $arguments -Wait -PassThru
    if ($proc.ExitCode -ne 0) { throw "Python installer failed with exit code $($proc.ExitCode)" }
}

# --- scripts and scheduled tasks --------------------------------------------------------------------
foreach ($script in @('common.ps1', 'every-boot.ps1', 'supervise.ps1', 'stop.ps1')) {
    Copy-Item -Path (Join-Path $PSScriptRoot $script) -Destination (Join-Path $BinDir $script) -Force
}

$everyBoot = Join-Path $BinDir 'every-boot.ps1'
$user = "$env:USERDOMAIN\$env:USERNAME"
# Interactive, at logon of the auto-logon user: MT5 terminals are desktop applications.
$principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Highest
$settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -MultipleInstances IgnoreNew
$boot = New-ScheduledTaskAction -Execute 'powershell.exe' `
    -Argument "-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$everyBoot`""
Register-ScheduledTask -TaskName 'mt5-bridge-boot' -Action $boot -Principal $principal -Settings $settings `
    -Trigger (New-ScheduledTaskTrigger -AtLogOn -User $user) -Force | Out-Null
$ensure = New-ScheduledTaskAction -Execute 'powershell.exe' `
    -Argument "-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File `"$everyBoot`" -Ensure"
$every5 = New-ScheduledTaskTrigger -Once -At (Get-Date).AddMinutes(5) -RepetitionInterval (New-TimeSpan -Minutes 5)
Register-ScheduledTask -TaskName 'mt5-bridge-ensure' -Action $ensure -Principal $principal -Settings $settings `
    -Trigger $every5 -Force | Out-Null

# MT5 terminals must not be put to sleep with the VM's display.
& powercfg.exe /change standby-timeout-ac 0
& powercfg.exe /change monitor-timeout-ac 0

Write-BridgeLog 'first boot done: running every-boot'
& $everyBoot
